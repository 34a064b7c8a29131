"""SD-Conv with Lightning: ResNet-10 on scikit-learn's handwritten digits (real data, offline).

    python examples/lightning_sdconv.py            # 1,437 images, 8 epochs (about 20 s on 2 cores)
    python examples/lightning_sdconv.py --epochs 1

PadCallback anneals the attention temperature and steps SD-Conv's thresholds; the LightningModule adds the
budget loss with one call (``self.pad.extra_loss()``) and optimises ``pad.optimizer_parameters()``.
"""

import argparse
import logging
import warnings

import lightning as L
import torch
import torch.nn.functional as F

import padnet
from padnet.training.data.digits import load_digits_data
from padnet.training.integrations.lightning import PadCallback


class Classifier(L.LightningModule):
    def __init__(self, pad):
        super().__init__()
        self.pad = pad

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.pad(x), y) + self.pad.extra_loss()

    def configure_optimizers(self):
        return torch.optim.SGD(self.pad.optimizer_parameters(), lr=0.05, momentum=0.9)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args(argv)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    L.seed_everything(0, verbose=False)
    train, test = load_digits_data()
    model = padnet.create_model("resnet10", num_classes=10, in_chans=1, stem="small", width=0.25)
    pad = padnet.get_pad_model(model, padnet.PadConfig(method="sdconv", sparsity=0.5, pruning_iterations=1,
                                                       temperature_anneal=1, temperature_unit="epochs"))
    data = torch.utils.data.TensorDataset(train.images.float() / 255, train.labels)
    batches = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[PadCallback(pad)])
    trainer.fit(Classifier(pad), batches)
    pad.eval()
    with torch.no_grad():
        correct = int((pad(test.images.float() / 255).argmax(1) == test.labels).sum())
    report = padnet.layers.sdconv.sparsity_report(pad.base_model)
    print(pad.summary((1, 8, 8)))
    print(f"sparsity reached: {100 * report['sparsity']:.1f}%  test top-1: {100 * correct / len(test.labels):.2f}%")
    return pad


if __name__ == "__main__":
    main()
