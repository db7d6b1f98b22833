"""``python -m crm_platform.devinfra``: the same as ``crm-infra``."""

import sys

from crm_platform.devinfra.cli import main

sys.exit(main())
