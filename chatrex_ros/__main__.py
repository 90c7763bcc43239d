"""`python -m chatrex_ros` is `chatrex-ros`."""

import sys

from chatrex_ros.cli import main

sys.exit(main())
