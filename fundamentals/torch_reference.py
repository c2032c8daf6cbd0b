"""The benchmark's PyTorch reference: the same MLP and train step in PyTorch eager.

Only ``fundamentals.benchmark`` runs this, in a process of its own, when ``torch`` is
importable (the optional ``bench`` extra: ``pip install -e '.[bench]'``); nothing
else in the project imports torch.

The model and step mirror ``train.make_train_step`` on ``benchmark.model_config``:
Linear (no bias) → BatchNorm1d (momentum 1 − α, ε) → tanh per hidden layer, a Linear
with bias to the logits, softmax cross-entropy, SGD with heavy-ball momentum
(v ← g + μ·v, θ ← θ − η·v: ``torch.optim.SGD`` and optax agree); the batch is
gathered from the uint8 dataset by a per-epoch permutation and normalized inside the
step, as the project's step does on device. The initial weights are the project's
own (an ``.npz`` the parent wrote), so both start from the same numbers.
"""

import numpy as np


def build(init: dict[str, np.ndarray], *, hidden: int, layers: int, momentum: float,
          lr: float, bn_momentum: float, bn_epsilon: float):
  """The model (training mode) and its SGD optimizer, from the project's init."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  modules = []
  for i in range(layers):
    linear = nn.Linear(init[f'dense_{i}'].shape[0], hidden, bias=False)
    with torch.no_grad():  # Flax kernels are [in, out]; torch weights [out, in].
      linear.weight.copy_(torch.from_numpy(init[f'dense_{i}'].T.copy()))
    modules += [linear, nn.BatchNorm1d(hidden, momentum=1 - bn_momentum, eps=bn_epsilon),
                nn.Tanh()]
  output = nn.Linear(hidden, init['output_kernel'].shape[1])
  with torch.no_grad():
    output.weight.copy_(torch.from_numpy(init['output_kernel'].T.copy()))
    output.bias.zero_()
  model = nn.Sequential(*modules, output).train()
  return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)


def make_step(model, optimizer, images, labels, mean, std, *, batch_size: int,
              autocast: bool):
  """``step(perm, position) -> loss``: one training step on the batch at ``position``
  of the epoch order ``perm`` (uint8 gather and normalization included)."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  scale = 1 / (255 * std)
  shift = mean / std

  def step(perm, position):
    idx = perm[position * batch_size:(position + 1) * batch_size]
    x = images[idx].float().mul_(scale).sub_(shift).flatten(1)
    y = labels[idx]
    optimizer.zero_grad(set_to_none=True)
    if autocast:
      with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    else:
      loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss

  return step


def measure(spec: dict, *, timing, clock) -> dict:
  """Times ``spec`` (a ``benchmark.plan`` case) with ``timing(run, start)``
  (``benchmark.time_steps``); ``clock()``: seconds since the process started."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(spec['threads'])
  data = np.load(spec['data'])
  images = torch.from_numpy(data['images'])
  labels = torch.from_numpy(data['labels'].astype(np.int64))
  mean = torch.from_numpy(data['mean'].astype(np.float32))
  std = torch.from_numpy(data['std'].astype(np.float32))
  members = []  # A sweep's runs, stepped one after another.
  for path in spec['init']:
    model, optimizer = build(dict(np.load(path)), hidden=spec['hidden'],
                             layers=spec['layers'], momentum=spec['momentum'],
                             lr=spec['lr'], bn_momentum=spec['bn_momentum'],
                             bn_epsilon=spec['bn_epsilon'])
    members.append(make_step(model, optimizer, images, labels, mean, std,
                             batch_size=spec['batch_size'],
                             autocast=spec['precision'] == 'bfloat16'))
  steps_per_epoch = len(labels) // spec['batch_size']
  perms = list(torch.from_numpy(data['perms'].astype(np.int64)))  # The JAX run's order.

  def run(start, count):
    loss = None
    for s in range(start, start + count):
      epoch, position = divmod(s, steps_per_epoch)
      for step in members:
        loss = step(perms[epoch % len(perms)], position)
    return float(loss.detach())

  first_loss = float(members[0](perms[0], 0).detach())
  for step in members[1:]:
    step(perms[0], 0)
  first_step_s = clock()
  result = timing(run, start=1)
  result.update(first_step_s=first_step_s, first_loss=first_loss,
                library=f'torch {torch.__version__}')
  return result
