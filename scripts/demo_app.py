"""Serve the demo page: upload an image, name what to segment, see the answer, the overlay, each
expression's [SEG]/[REJ] decision and the masks.

    python scripts/demo_app.py                        # the demo's weights, runs/tiny_synthetic/final
    python scripts/demo_app.py --weights W --port 8080
    python scripts/demo_app.py --help                 # every option

The page is gsva.demo.page (also installed as the `gsva-demo` command).
"""

from gsva.demo.page import main

if __name__ == "__main__":
    main()
