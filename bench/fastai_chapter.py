"""The chapter's own code, from loading the images to `simple_net`, as one script: what a
reader runs before the CNN, for `make bench` to time against a cold `dvc repro` up to
train_mlp.

Run by the python of bench/.fastai-venv (fastai beside the project's torch), on a folder in
fast.ai's MNIST_SAMPLE layout; timed by the caller as a whole process (Python, fastai's
import and all). Prints one JSON line of the accuracies it reached.

    python bench/fastai_chapter.py PATH_TO_MNIST_SAMPLE
"""

import json
import sys

from fastai.vision.all import (SGD, DataLoader, DataLoaders, Image, Learner, Path,  # noqa: F401
                               nn, tensor, torch)


def main(folder: str) -> None:
    # The chapter, cell by cell (its prints and plots left out).
    path = Path(folder)
    threes = (path/'train'/'3').ls().sorted()
    sevens = (path/'train'/'7').ls().sorted()
    seven_tensors = [tensor(Image.open(o)) for o in sevens]
    three_tensors = [tensor(Image.open(o)) for o in threes]
    stacked_sevens = torch.stack(seven_tensors).float()/255
    stacked_threes = torch.stack(three_tensors).float()/255
    mean3 = stacked_threes.mean(0)
    mean7 = stacked_sevens.mean(0)
    valid_3_tens = torch.stack([tensor(Image.open(o)) for o in (path/'valid'/'3').ls()])
    valid_3_tens = valid_3_tens.float()/255
    valid_7_tens = torch.stack([tensor(Image.open(o)) for o in (path/'valid'/'7').ls()])
    valid_7_tens = valid_7_tens.float()/255

    def mnist_distance(a, b): return (a-b).abs().mean((-1, -2))
    def is_3(x): return mnist_distance(x, mean3) < mnist_distance(x, mean7)
    accuracy_3s = is_3(valid_3_tens).float().mean()
    accuracy_7s = (1 - is_3(valid_7_tens).float()).mean()

    train_x = torch.cat([stacked_threes, stacked_sevens]).view(-1, 28*28)
    train_y = tensor([1]*len(threes) + [0]*len(sevens)).unsqueeze(1)
    dset = list(zip(train_x, train_y))
    valid_x = torch.cat([valid_3_tens, valid_7_tens]).view(-1, 28*28)
    valid_y = tensor([1]*len(valid_3_tens) + [0]*len(valid_7_tens)).unsqueeze(1)
    valid_dset = list(zip(valid_x, valid_y))

    def init_params(size, std=1.0): return (torch.randn(size)*std).requires_grad_()
    weights = init_params((28*28, 1))
    bias = init_params(1)
    def linear1(xb): return xb@weights + bias

    def mnist_loss(predictions, targets):
        predictions = predictions.sigmoid()
        return torch.where(targets == 1, 1-predictions, predictions).mean()

    dl = DataLoader(dset, batch_size=256)
    valid_dl = DataLoader(valid_dset, batch_size=256)

    def calc_grad(xb, yb, model):
        preds = model(xb)
        loss = mnist_loss(preds, yb)
        loss.backward()

    def train_epoch(model, lr, params):
        for xb, yb in dl:
            calc_grad(xb, yb, model)
            for p in params:
                p.data -= p.grad*lr
                p.grad.zero_()

    def batch_accuracy(xb, yb):
        preds = xb.sigmoid()
        correct = (preds > 0.5) == yb
        return correct.float().mean()

    def validate_epoch(model):
        accs = [batch_accuracy(model(xb), yb) for xb, yb in valid_dl]
        return round(torch.stack(accs).mean().item(), 4)

    lr = 1.
    params = weights, bias
    for i in range(21):  # the chapter's one epoch, then train_model's 20
        train_epoch(linear1, lr, params)
    linear = validate_epoch(linear1)

    dls = DataLoaders(dl, valid_dl)
    learn = Learner(dls, nn.Linear(28*28, 1), opt_func=SGD, loss_func=mnist_loss,
                    metrics=batch_accuracy)
    with learn.no_bar(), learn.no_logging():
        learn.fit(10, lr=lr)
    simple_net = nn.Sequential(nn.Linear(28*28, 30), nn.ReLU(), nn.Linear(30, 1))
    learn = Learner(dls, simple_net, opt_func=SGD, loss_func=mnist_loss, metrics=batch_accuracy)
    with learn.no_bar(), learn.no_logging():
        learn.fit(40, 0.1)
    print(json.dumps({"baseline": float((accuracy_3s + accuracy_7s) / 2), "linear": linear,
                      "mlp": float(learn.recorder.values[-1][-1])}))


if __name__ == "__main__":
    main(sys.argv[1])
