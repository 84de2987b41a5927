"""Serve the demo page: upload an image, name what to segment, see the answer, the overlay, each
expression's [SEG]/[REJ] decision and the masks.

    python scripts/demo_app.py                        # the demo's weights, runs/tiny_synthetic/final
    python scripts/demo_app.py --weights W --port 8080
    python scripts/demo_app.py --help                 # every option

The page is gsva.webapp (also installed as the `gsva-demo` command).
"""

from gsva.webapp import main

if __name__ == "__main__":
    main()
