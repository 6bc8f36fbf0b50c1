"""The AFR authors' last-layer training and sweep, transcribed as a test and benchmark oracle.

Source: github.com/AndPotap/afr, `notebooks/wb_celeba.ipynb` at commit
256a566784498830cd70ac7b5278e85edf869257: `wxe_fn`, `compute_afr_weights`, `train` and `sweep` (the
cells that produced the paper's Waterbirds and CelebA tables). The computation is theirs line for
line; the edits, each marked `# edit:`, are:
- tensors stay on `device` (theirs: `.cuda()`); embeddings arrive as arguments, not from a checkpoint;
- the per-epoch diagnostics that feed only plots and progress bars (train/val weighted accuracies,
  val losses, weights by group, mean accuracies) and the plots are dropped; they draw no random numbers;
- `train` also returns the early-stopped head's test predictions;
- `init="zero"` starts Δ at 0 instead of `nn.Linear`'s random initialisation (ablation only; the
  default `init="random"` is theirs);
- `sweep` takes one embedding dict instead of checkpoints, and returns the selected hyperparameters.
"""

import numpy as np
import torch


def wxe_fn(logits, y, weights):
    ce = torch.nn.functional.cross_entropy(logits, y, reduction='none')
    l = weights * ce
    return l.sum()


def compute_afr_weights(erm_logits, class_label, gamma, balance_classes):
    # erm_logits: (n_samples, n_classes)
    # class_label: (n_samples,)
    # gamma: float
    with torch.no_grad():
        p = erm_logits.softmax(-1)
        y_onehot = torch.zeros_like(erm_logits).scatter_(-1, class_label.unsqueeze(-1), 1)
        p_true = (p * y_onehot).sum(-1)
        weights = (-gamma * p_true).exp()
        n_classes = torch.unique(class_label).numel()
        # class balancing
        if balance_classes:
            class_count = []
            for y in range(n_classes):
                class_count.append((class_label == y).sum())
            for y in range(1, n_classes):
                weights[class_label == y] *= class_count[0] / class_count[y]
        weights /= weights.sum()
    return weights


def get_accs(test_predictions, test_y, test_groups):
    return [(test_predictions == test_y)[test_groups == g].float().mean().item() for g in range(test_groups.max() + 1)]


def train(emb_dict, num_epochs, gamma, reg_coeff, lr=1e-2, balance_classes=False, early_stop='wga',
          device="cpu", init="random"):  # edit: device and init arguments; plot/silent/group_uniform/opt dropped
    reweighting_embeddings = emb_dict['e'].to(device)
    reweighting_y = emb_dict['y'].to(device)
    test_embeddings = emb_dict['test_e'].to(device)
    test_y = emb_dict['test_y'].to(device)
    test_groups = emb_dict['test_g'].to(device)
    val_embeddings = emb_dict['val_e'].to(device)
    val_y = emb_dict['val_y'].to(device)
    val_groups = emb_dict['val_g'].to(device)
    w0 = emb_dict['w0'].to(device)
    b0 = emb_dict['b0'].to(device)

    class Model(torch.nn.Module):
        def __init__(self, w0, b0):
            super().__init__()
            self.w0 = w0
            self.b0 = b0
            self.linear = torch.nn.Linear(w0.shape[1], w0.shape[0], bias=True)

        def forward(self, x):
            y_old = x @ self.w0.t() + self.b0
            y_new = self.linear(x)
            return y_old + y_new

    model = Model(w0, b0)
    model.to(device)
    if init == "zero":  # edit: ablation of the random initialisation of Δ
        torch.nn.init.zeros_(model.linear.weight)
        torch.nn.init.zeros_(model.linear.bias)

    criterion = wxe_fn
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=0., momentum=0.)

    test_wgas = []
    val_wgas = []
    test_preds = []  # edit: kept for the comparison

    initial_logits = reweighting_embeddings @ w0.t() + b0
    weights = compute_afr_weights(initial_logits, reweighting_y, gamma, balance_classes)
    for _ in range(num_epochs):
        optimizer.zero_grad()
        logits = model(reweighting_embeddings)
        loss = criterion(logits, reweighting_y, weights)
        reg = model.linear.weight.pow(2).sum() + model.linear.bias.pow(2).sum()
        loss += reg_coeff * reg

        loss.backward()
        # clip gradients
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.)
        optimizer.step()
        # additional infos
        with torch.no_grad():
            val_accs = get_accs(torch.argmax(model(val_embeddings), -1), val_y, val_groups)
            test_pred = torch.argmax(model(test_embeddings), -1)
            test_accs = get_accs(test_pred, test_y, test_groups)
            test_preds.append(test_pred.cpu())
            val_wgas.append(min(val_accs))
            test_wgas.append(min(test_accs))

    if early_stop == 'wga':
        earlystop_epoch = np.argmax(val_wgas)
        early_stop_metric = np.max(val_wgas)
    else:  # edit: the other early-stopping rules are not used by the paper's sweeps
        raise ValueError(f"Unknown early_stop: {early_stop}")
    earlystop_twga = test_wgas[earlystop_epoch]
    return early_stop_metric, earlystop_twga, test_preds[earlystop_epoch], int(earlystop_epoch) + 1  # edit


def sweep(emb_dict, sweep_config, seed=0, device="cpu", init="random"):
    """Their `sweep` for one embedding dict: grid order lr, γ, λ, balance; the first strictly better
    val WGA wins. → (val WGA, test WGA, test predictions, (lr, γ, λ, balance), early-stop epoch)."""
    best_vwga = 0
    best = None
    # fix all seeds
    torch.manual_seed(seed)
    np.random.seed(seed)
    import random
    random.seed(seed)
    for lr in sweep_config["lr_choices"]:
        for gamma in sweep_config["gamma_choices"]:
            for reg_coeff in sweep_config["reg_coeff_choices"]:
                for balance_classes in sweep_config["balance_classes_choices"]:
                    val_wga, test_wga, test_pred, epoch = train(
                        emb_dict, num_epochs=sweep_config['num_epochs'], gamma=gamma, reg_coeff=reg_coeff, lr=lr,
                        balance_classes=balance_classes, early_stop=sweep_config['early_stop'], device=device,
                        init=init)
                    if val_wga > best_vwga:
                        best_vwga = val_wga
                        best = (val_wga, test_wga, test_pred, (lr, gamma, reg_coeff, balance_classes), epoch)
    return best
