"""The CPU demo: the synthetic dataset (synthetic.py), the tiny pretrained components that stand in for
downloaded checkpoints (components.py, prepare.py), and the demo page (page.py), which serves any
GSVA model directory."""
