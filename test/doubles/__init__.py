"""Test doubles for things outside the package (the language model, a camera). Named as such."""
