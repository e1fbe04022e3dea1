"""charrnn against PyTorch on identical weights (float64): loss, every gradient, carried state.

Weight mapping (docs/model.md): W_xh = weight_ih.T, W_hh = weight_hh.T; one-hot inputs
make layer 0's input product a row gather. RNN/LSTM: b_h = bias_ih + bias_hh (here bias_hh = 0,
so each of torch's bias gradients equals ours). GRU: b_h = bias_ih + [bias_hh_r, bias_hh_z, 0],
b_hn = bias_hh_n.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model
from gradcheck import rel_error

torch = pytest.importorskip("torch")

TOL = 1e-9
V, H, L, T, B = 7, 5, 2, 6, 3


def torch_twin(model):
    """A torch RNN + Linear with the same weights as `model`."""
    cell = model.shape.cell
    kind = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    kwargs = {"nonlinearity": "tanh"} if cell == "rnn" else {}
    net = kind(V, H, num_layers=L, **kwargs).double()
    head = torch.nn.Linear(H, V).double()
    p = model.params
    with torch.no_grad():
        for i in range(L):
            getattr(net, f"weight_ih_l{i}").copy_(torch.from_numpy(p[f"layers.{i}.W_xh"].T))
            getattr(net, f"weight_hh_l{i}").copy_(torch.from_numpy(p[f"layers.{i}.W_hh"].T))
            getattr(net, f"bias_ih_l{i}").copy_(torch.from_numpy(p[f"layers.{i}.b_h"]))
            bias_hh = torch.zeros_like(getattr(net, f"bias_hh_l{i}"))
            if cell == "gru":
                bias_hh[2 * H :] = torch.from_numpy(p[f"layers.{i}.b_hn"])
            getattr(net, f"bias_hh_l{i}").copy_(bias_hh)
        head.weight.copy_(torch.from_numpy(p["W_hy"].T))
        head.bias.copy_(torch.from_numpy(p["b_y"]))
    return net, head


def torch_grads(net, head, cell: str) -> dict[str, np.ndarray]:
    """torch's gradients, named and shaped as charrnn's."""
    grads = {"W_hy": head.weight.grad.numpy().T, "b_y": head.bias.grad.numpy()}
    for i in range(L):
        grads[f"layers.{i}.W_xh"] = getattr(net, f"weight_ih_l{i}").grad.numpy().T
        grads[f"layers.{i}.W_hh"] = getattr(net, f"weight_hh_l{i}").grad.numpy().T
        grads[f"layers.{i}.b_h"] = getattr(net, f"bias_ih_l{i}").grad.numpy()
        bias_hh_grad = getattr(net, f"bias_hh_l{i}").grad.numpy()
        if cell == "gru":
            grads[f"layers.{i}.b_hn"] = bias_hh_grad[2 * H :]
            np.testing.assert_allclose(bias_hh_grad[: 2 * H], grads[f"layers.{i}.b_h"][: 2 * H], rtol=1e-12)
        else:
            np.testing.assert_allclose(bias_hh_grad, grads[f"layers.{i}.b_h"], rtol=1e-12)
    return grads


def torch_state(state: np.ndarray, cell: str):
    """charrnn's (L, S, B, H) as torch's h0 or (h0, c0), requiring grad."""
    tensors = [torch.tensor(state[:, s], requires_grad=True) for s in range(state.shape[1])]
    return tensors if cell == "lstm" else tensors[:1]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_loss_gradients_and_state_match_torch_over_two_chunks(cell: str) -> None:
    """Chunk 1 from a random state, chunk 2 from the state chunk 1 carried over (detached)."""
    model = make_model(cell, layers=L, V=V, H=H, scale=1.5)
    net, head = torch_twin(model)
    rng = np.random.default_rng(7)
    state = rng.normal(size=model.shape.state_shape(B)) * 0.5
    for _chunk in range(2):
        ids, targets = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
        ours, new_state = model.loss(ids, targets, state)
        grads = model.backward()

        net.zero_grad()
        head.zero_grad()
        t_state = torch_state(state, cell)
        x = torch.nn.functional.one_hot(torch.from_numpy(ids), V).double()
        out, t_final = net(x, tuple(t_state) if cell == "lstm" else t_state[0])
        logits = head(out)
        theirs = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(targets).reshape(-1))
        theirs.backward()

        assert abs(ours - theirs.item()) <= TOL * abs(theirs.item())
        for name, expected in torch_grads(net, head, cell).items():
            assert rel_error(grads[name], expected) < TOL, name
        d_state0 = np.stack([t.grad.numpy() for t in t_state], axis=1)
        assert rel_error(model.dstate0, d_state0) < TOL
        final = np.stack([t.detach().numpy() for t in (t_final if cell == "lstm" else (t_final,))], axis=1)
        assert rel_error(new_state, final) < TOL
        state = new_state.copy()


@pytest.mark.parametrize("kind", ["adam", "adagrad", "sgd"])
def test_optimizer_steps_with_clipping_match_torch(kind: str) -> None:
    """Three updates with global-norm clipping give torch's parameters."""
    from charrnn.config import TrainConfig
    from charrnn.optim import Optimizer, clip_by_global_norm

    rng = np.random.default_rng(0)
    params = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params.values()]
    config = TrainConfig(optimizer=kind, lr=0.01, grad_clip=1.0, eps=1e-10, momentum=0.9)
    opt = Optimizer(config.optimizer_settings(), params)
    topt = {
        "adam": lambda: torch.optim.Adam(tparams, lr=0.01, betas=(0.9, 0.999), eps=1e-10),
        "adagrad": lambda: torch.optim.Adagrad(tparams, lr=0.01, eps=1e-10),
        "sgd": lambda: torch.optim.SGD(tparams, lr=0.01, momentum=0.9),
    }[kind]()
    for _ in range(3):
        grads = {k: rng.normal(size=p.shape) * 3 for k, p in params.items()}
        for tp, g in zip(tparams, grads.values(), strict=True):
            tp.grad = torch.tensor(g.copy())
        clip_by_global_norm(grads, 1.0)
        norm = torch.sqrt(sum((tp.grad**2).sum() for tp in tparams))  # clip_grad_norm_ adds 1e-6 to it
        for tp in tparams:
            tp.grad *= min(1.0, 1.0 / norm.item())
        opt.step(params, grads, 0.01)
        topt.step()
    for p, tp in zip(params.values(), tparams, strict=True):
        assert rel_error(p, tp.detach().numpy()) < 1e-12


def test_decoupled_weight_decay_matches_torch_adamw_on_matrices_and_spares_biases() -> None:
    from charrnn.config import TrainConfig
    from charrnn.optim import Optimizer

    rng = np.random.default_rng(1)
    params = {"W": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    tW, tb = (torch.tensor(p.copy(), requires_grad=True) for p in params.values())
    config = TrainConfig(lr=0.01, eps=1e-10, weight_decay=0.1)
    opt = Optimizer(config.optimizer_settings(), params)
    groups = [{"params": [tW], "weight_decay": 0.1}, {"params": [tb], "weight_decay": 0.0}]
    topt = torch.optim.AdamW(groups, lr=0.01, betas=(0.9, 0.999), eps=1e-10)
    for _ in range(3):
        grads = {k: rng.normal(size=p.shape) for k, p in params.items()}
        tW.grad, tb.grad = (torch.tensor(g.copy()) for g in grads.values())
        opt.step(params, grads, 0.01)
        topt.step()
    assert rel_error(params["W"], tW.detach().numpy()) < 1e-12
    assert rel_error(params["b"], tb.detach().numpy()) < 1e-12


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_drop_connect_and_locked_output_dropout_match_torch_with_the_same_masks(cell: str) -> None:
    """torch runs with our masks: `weight_hh` multiplied by each layer's DropConnect mask, the
    top output by the locked (1, B, H) mask. Its gradient on the masked matrix, times the mask,
    is ours on W_hh; every other value and gradient is equal as it is."""
    model = make_model(cell, layers=L, V=V, H=H, scale=1.5, weight_drop=0.3, output_dropout=0.4, locked_dropout=True)
    rng = np.random.default_rng(8)
    state = rng.normal(size=model.shape.state_shape(B)) * 0.5
    ids, targets = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    ours, _ = model.loss(ids, targets, state, np.random.default_rng(11))
    grads = model.backward()
    weight_masks = model.stack._weight_masks
    out_mask = model.stack._caches[-1][2]  # (H, 1, B)
    assert out_mask.shape == (H, 1, B) and len(weight_masks) == L

    net, head = torch_twin(model)
    with torch.no_grad():
        for i in range(L):
            getattr(net, f"weight_hh_l{i}").mul_(torch.from_numpy(weight_masks[i].T))
    t_state = torch_state(state, cell)
    x = torch.nn.functional.one_hot(torch.from_numpy(ids), V).double()
    out, _ = net(x, tuple(t_state) if cell == "lstm" else t_state[0])
    logits = head(out * torch.from_numpy(out_mask).permute(1, 2, 0))
    theirs = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(targets).reshape(-1))
    theirs.backward()

    assert abs(ours - theirs.item()) <= TOL * abs(theirs.item())
    expected = torch_grads(net, head, cell)
    for i in range(L):
        expected[f"layers.{i}.W_hh"] = expected[f"layers.{i}.W_hh"] * weight_masks[i]
    for name, value in expected.items():
        assert rel_error(grads[name], value) < TOL, name
