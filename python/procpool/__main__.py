"""`python -m procpool ...` runs the procpool binary this package ships."""

import os
import sys

from ._binary import find_binary


def main():
    binary = find_binary()
    os.execv(binary, [binary, *sys.argv[1:]])


if __name__ == "__main__":
    main()
