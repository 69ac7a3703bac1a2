"""Benchmark of one RLP step: reference engine vs packed engine vs next-token training. Same as `rlpt bench`.

    python bench/engine.py                      # both models, both shapes, the positions-doubling table
    python bench/engine.py --json               # one JSON object for (4 documents, 16 positions, G=4, L=32)
    python bench/engine.py --model DIR --docs 8 --positions 1 --group-size 4 --thought-tokens 32
"""

from rlpt.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
