"""``python -m sailscope``: the command-line interface."""
from sailscope.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
