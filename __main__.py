"""``python -m sailscope``: the command-line interface."""
from sailscope.core.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
