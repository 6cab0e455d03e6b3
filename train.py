#!/usr/bin/env python
"""Pretrain or fine-tune PathFLIP with the Hugging Face `Trainer`, like a transformers example script.

    python train.py --dataset_name_or_path bags/dataset --text_model_name_or_path path/to/bert \
        --output_dir runs/pathflip --do_train --do_eval
    torchrun --nproc_per_node 4 train.py ...      # or: accelerate launch train.py ...

The same as `pathflip train ...`, with the same one-line errors; `python train.py --help` lists every option.
"""

import sys

from pathflip.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]], train_prog="train.py"))
