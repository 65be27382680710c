import sys

from .cli import proxy_main

sys.exit(proxy_main())
