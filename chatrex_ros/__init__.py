"""ChatRex-style joint perception and understanding for ROS 2.

The generated message modules (``chatrex_ros.msg``, ``.srv``, ``.action``) are installed next to the
hand-written code.  When this source tree comes first on ``sys.path`` (``python -m pytest`` from the
repository root) it has no ``msg/``; extending ``__path__`` lets Python also find the installed copy.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
