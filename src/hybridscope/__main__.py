from hybridscope.cli import main

main()
