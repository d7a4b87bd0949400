from score_erasure.cli import main

main()
