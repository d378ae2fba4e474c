"""Run the packaged Llama decoder (commscope.models.llama) from the repository.

    python examples/llama.py --tp 2 --pp 2 --out traces        # spawns 4 gloo ranks
    python examples/llama.py                                    # single process reference
"""

from commscope.models.llama import main

if __name__ == "__main__":
    main()
