"""PAD-Net in a plain PyTorch training loop: ResNet-10 on Fashion-MNIST (real data, offline).

    python examples/plain_loop.py                  # 6,000 images, 2 epochs (about 40 s on 2 cores)
    python examples/plain_loop.py --train-size 256 --epochs 1

padnet adds four lines to the loop: start_training, before_step, extra_loss and after_step.
"""

import argparse

import torch
import torch.nn.functional as F

import padnet
from padnet.training.data import load_dataset, make_loader


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    train, test = load_dataset("fashion-mnist")
    train = train.subset(args.train_size, seed=0)
    model = padnet.create_model("resnet10", num_classes=10, in_chans=1, stem="small", width=0.25)
    pad = padnet.get_pad_model(model, padnet.PadConfig(method="pad", kappa=0.3, partition_batches=4,
                                                       init_from_pretrained=False))  # trained from scratch
    optimizer = torch.optim.SGD(pad.optimizer_parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = len(make_loader(train, 64, train=True, seed=0, epoch=0))

    pad.start_training(steps_per_epoch=steps_per_epoch, epochs=args.epochs,          # padnet
                       partition_data=make_loader(train, 64, train=True, seed=1, epoch=0))
    pad.train()
    for epoch in range(args.epochs):
        for x, y in make_loader(train, 64, train=True, seed=0, epoch=epoch):
            pad.before_step()                                                        # padnet
            loss = F.cross_entropy(pad(x), y) + pad.extra_loss()                     # padnet
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            pad.after_step()                                                         # padnet
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}")

    pad.eval()
    with torch.no_grad():
        correct = sum(int((pad(x).argmax(1) == y).sum()) for x, y in make_loader(test, 500, train=False))
    print(pad.training_state.report.summary())
    print(pad.summary((1, 28, 28)))
    print(f"test top-1: {100 * correct / len(test):.2f}%")
    deployed = pad.merge_and_unload()  # compact inference form
    return deployed


if __name__ == "__main__":
    main()
