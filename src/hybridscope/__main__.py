import sys

try:
    from hybridscope.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python is still loading the command
    print("hybridscope: error: interrupted", file=sys.stderr)
    sys.exit(130)

main()
