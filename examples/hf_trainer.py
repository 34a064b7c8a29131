"""PAD-MoE with the transformers Trainer: MiniLM fine-tuned on Rotten Tomatoes (real data, offline).

    python examples/hf_trainer.py                  # 320 sentences, 2 epochs (about a minute on 2 cores)
    python examples/hf_trainer.py --train-size 64 --eval-size 64

Every FFN of the pretrained encoder becomes an upcycled 4-expert MoE with a PAD-Net mask; PadTrainerCallback
anneals nothing here (MoE has no temperature) but runs the mode partition at the start of epoch 2 (PAD-Net
appendix A), and PadModel adds the load-balancing loss to the Trainer's loss.
"""

import argparse
import os
import tempfile

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments
from transformers.utils import logging

import padnet
from padnet.training.integrations.transformers import PadTrainerCallback
from padnet.training.nlp.finetune import resolve_model
from padnet.training.data.text import encode, load_task, loader


def subset(pairs, size):
    """``size`` sentences drawn at random (seed 0): the file lists the reviews sorted by label."""
    keep = torch.randperm(len(pairs.labels), generator=torch.Generator().manual_seed(0))[:size].tolist()
    return type(pairs)([pairs.texts[i] for i in keep], [pairs.labels[i] for i in keep])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=320)
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.set_verbosity_error()
    torch.manual_seed(0)
    path = resolve_model("minilm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, use_safetensors=True)
    train = subset(load_task("rotten_tomatoes", "train"), args.train_size)
    test = subset(load_task("rotten_tomatoes", "validation"), args.eval_size)
    train_data, test_data = encode(train, tokenizer, 128), encode(test, tokenizer, 128)

    pad = padnet.get_pad_model(model, padnet.PadConfig(method="pad-moe", num_experts=4, kappa=0.5,
                                                       partition_batches=2, partition_iterations=2))
    partition_batches = list(loader(train_data, tokenizer, 16, shuffle=True, seed=1))[:2]
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(output_dir=out, num_train_epochs=args.epochs, per_device_train_batch_size=16,
                                     learning_rate=1e-4, warmup_steps=2, weight_decay=0.1, save_strategy="no",
                                     report_to=[], logging_strategy="no", remove_unused_columns=False,
                                     use_cpu=True, disable_tqdm=True, seed=0)
        trainer = Trainer(model=pad, args=training, train_dataset=train_data,
                          data_collator=loader(train_data, tokenizer, 16, shuffle=False).collate_fn,
                          callbacks=[PadTrainerCallback(pad, partition_data=partition_batches)])
        trainer.train()
    pad.eval()
    with torch.no_grad():
        correct = 0
        for batch in loader(test_data, tokenizer, 64, shuffle=False):
            labels = batch.pop("labels")
            correct += int((pad(**batch).logits.argmax(-1) == labels).sum())
    print(pad.training_state.report.summary())
    print(pad.summary())
    print(f"validation accuracy: {100 * correct / len(test.labels):.2f}%")
    return pad


if __name__ == "__main__":
    main()
