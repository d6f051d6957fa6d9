"""Keras helpers: lazy import, seeded MLPs, a training loop, NumPy inference.

Keras (and its backend) is imported only when a network is trained. A fitted
network is kept as plain NumPy arrays (:class:`MLPWeights`) and evaluated with
NumPy, so fitted estimators pickle, ``copy.deepcopy`` and load in a fresh
process without Keras, with bit-identical outputs, and ``transform`` never pays
for importing the backend.
"""

import os
import sys
import threading
import time
import warnings
from collections import OrderedDict
from numbers import Integral, Real

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import gen_batches
from sklearn.utils._param_validation import Interval

_MAX_SEED = np.iinfo(np.int32).max

ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0.0, out=z),
    "tanh": lambda z: np.tanh(z, out=z),
    "linear": lambda z: z,
}


#: ``_parameter_constraints`` of the training settings every network shares.
TRAINING_CONSTRAINTS = {
    "epochs": [Interval(Integral, 1, None, closed="left")],
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    "learning_rate": [Interval(Real, 0, None, closed="neither")],
    "validation_fraction": [Interval(Real, 0, 1, closed="left")],
    "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
}

#: The ``'adaptive'`` schedule: how often and by how much it lowers the
#: learning rate, and the patience after the first drop (divides
#: ``n_iter_no_change``).
LR_DROPS, LR_DIVISOR, LR_PATIENCE_DIVISOR = 2, 5.0, 3


def training_params(estimator, **overrides):
    """The ``params`` of :func:`train`, read from an estimator's settings."""
    params = {
        "epochs": estimator.epochs,
        "batch_size": estimator.batch_size,
        "learning_rate": estimator.learning_rate,
        "validation_fraction": estimator.validation_fraction,
        "n_iter_no_change": estimator.n_iter_no_change,
        "tol": getattr(estimator, "tol", 1e-4),
        "verbose": estimator.verbose,
        "learning_rate_schedule": getattr(estimator, "learning_rate_schedule", "constant"),
    }
    return {**params, **overrides}


def import_keras():
    """Import Keras, choosing JAX unless a backend was already chosen.

    JAX is used when ``KERAS_BACKEND`` is unset and Keras has not been
    imported yet; otherwise whatever backend is active is kept. The code only
    uses ``keras.ops``, so torch and tensorflow backends work too.
    """
    if "keras" not in sys.modules and not os.environ.get("KERAS_BACKEND"):
        os.environ["KERAS_BACKEND"] = "jax"
    import keras

    return keras


def draw_seed(rng):
    """An integer seed for Keras or another library, drawn from ``rng``."""
    return int(rng.randint(_MAX_SEED))


def check_hidden_sizes(hidden_layer_sizes):
    """The hidden layer widths as a list of positive ints, or a ValueError."""
    sizes = [int(s) for s in np.atleast_1d(hidden_layer_sizes)]
    if any(s < 1 for s in sizes):
        raise ValueError(
            f"hidden_layer_sizes must hold positive integers, got {hidden_layer_sizes!r}."
        )
    return sizes


def fit_scaling(X):
    """Per-feature mean and one overall scale for a network's inputs.

    One scale for all features keeps the Euclidean geometry of the data
    (per-feature scaling would blow up near-constant features). Computed in
    float64, with the deviations divided by their largest magnitude before
    squaring, so that neither float32 values ~1e20 nor float64 values ~1e200
    overflow (nor tiny values underflow).
    """
    mean = X.mean(axis=0, dtype=np.float64)
    big = 0.0
    for rows in gen_batches(len(X), 4096):
        big = max(big, float(np.abs(X[rows] - mean).max(initial=0.0)))
    if not big > 0:
        return mean, 1.0
    total = sum(float(np.sum(np.square((X[rows] - mean) / big)))
                for rows in gen_batches(len(X), 4096))
    return mean, big * float(np.sqrt(total / X.size))


def apply_scaling(X, mean, scale):
    """Standardise ``X`` with :func:`fit_scaling`'s ``mean`` and ``scale``.

    Returned in the dtype of ``X``. Float32 rows are computed in float32
    (the same rounded mean for every row, so fitted rows and queries get the
    same shift; 8x faster than going through float64 on 8k x 784 rows),
    unless a value overflows there; float64 rows in float64.
    """
    if X.dtype == np.float32:
        with np.errstate(over="ignore", invalid="ignore"):
            out = X - mean.astype(np.float32)
            out /= np.float32(scale)
        if np.isfinite(out).all():
            return out
    return ((X - mean) / scale).astype(X.dtype, copy=False)


def _glorot_uniform(seed):
    """Keras' ``GlorotUniform`` initialiser, drawn with NumPy from ``seed``.

    Keras' seeded initialisers draw with the backend's random ops, which JAX
    compiles anew for every shape: 0.25-0.3 s per ``Dense`` kernel whose
    shape the process has not seen yet, in a worker's first shard or each
    grid-search candidate (0.66 s of a 3.1 s router fit on 10,000 rows).
    """
    def initializer(shape, dtype=None):
        fan_in, fan_out = shape  # a Dense kernel
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        values = np.random.default_rng(seed).uniform(-limit, limit, size=shape)
        return values.astype(dtype or np.float32)

    return initializer


def build_mlp(n_inputs, layer_sizes, activations, seed, batch_norm=False):
    """A Keras ``Sequential`` of ``Dense`` layers with seeded initialisers.

    With ``batch_norm``, every layer but the last is ``Dense`` (without bias)
    -> ``BatchNormalization`` -> activation; :func:`train` sets the running
    statistics' momentum and :meth:`MLPWeights.from_keras` folds the
    normalisation back into the dense weights.
    """
    keras = import_keras()
    layers = [keras.Input(shape=(n_inputs,))]
    for i, (size, activation) in enumerate(zip(layer_sizes, activations)):
        normalised = batch_norm and i < len(layer_sizes) - 1
        layers.append(
            keras.layers.Dense(
                size,
                activation=None if normalised else activation,
                use_bias=not normalised,
                kernel_initializer=_glorot_uniform(seed + i),
            )
        )
        if normalised:
            layers.append(keras.layers.BatchNormalization())
            layers.append(keras.layers.Activation(activation))
    return keras.Sequential(layers)


def batch_norm_momentum(n_train, batch_size):
    """Momentum of the running statistics: they average about one epoch.

    Keras' default 0.99 (a memory of ~100 steps) is kept when an epoch has at
    least that many batches; small data sets get a shorter memory, so the
    statistics used for validation and inference follow the current weights.
    """
    steps = max(1, -(-n_train // batch_size))
    return float(min(0.99, max(0.0, 1.0 - 1.0 / steps)))


def _batch_norm_layers(model):
    """The ``BatchNormalization`` layers of ``model``, nested models included."""
    keras = import_keras()
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found.extend(_batch_norm_layers(layer))
    return found


def pairwise_distances(ops, A):
    """Euclidean distances between the rows of a batch, with ``keras.ops``.

    Squared distances are clamped away from zero before the square root so
    that the gradient stays finite on the diagonal.
    """
    sq = ops.sum(ops.square(A), axis=1)
    d2 = ops.expand_dims(sq, 1) - 2.0 * ops.matmul(A, ops.transpose(A)) + ops.expand_dims(sq, 0)
    return ops.sqrt(ops.maximum(d2, 1e-12))


def share_crossentropy(ids, logits):
    """Cross-entropy of ``logits`` against the share of each row's ``ids``
    (-1: none) falling in each class, with ``keras.ops``.

    Equal to ``CategoricalCrossentropy(from_logits=True)`` against the dense
    shares (a row without ids has loss 0 there too), without building them.
    """
    ops = import_keras().ops
    ids = ops.cast(ids, "int32")
    valid = ops.cast(ids >= 0, logits.dtype)
    log_p = ops.take_along_axis(ops.log_softmax(logits, axis=-1), ops.maximum(ids, 0), axis=-1)
    return -ops.sum(log_p * valid, axis=-1) / ops.maximum(ops.sum(valid, axis=-1), 1.0)


class MLPWeights:
    """The weights of a fitted MLP, evaluated with NumPy.

    Parameters
    ----------
    layers : list of (W, b, activation)
        ``W`` of shape ``(n_in, n_out)``, ``b`` of shape ``(n_out,)`` and the
        activation's name (a key of ``ACTIVATIONS``).
    """

    def __init__(self, layers):
        self.layers = [(np.asarray(W), np.asarray(b), act) for W, b, act in layers]

    @classmethod
    def from_keras(cls, model):
        """Copy the weights of a :func:`build_mlp` network.

        A ``BatchNormalization`` layer (in inference mode: its running
        statistics) is folded into the ``Dense`` layer before it, and an
        ``Activation`` layer becomes that layer's activation.
        """
        keras = import_keras()
        layers = []
        for layer in model.layers:
            weights = [np.asarray(w) for w in layer.get_weights()]
            if isinstance(layer, keras.layers.Dense):
                W = weights[0]
                b = weights[1] if layer.use_bias else np.zeros(W.shape[1], W.dtype)
                layers.append([W, b, layer.activation.__name__])
            elif isinstance(layer, keras.layers.BatchNormalization):
                gamma, beta, mean, var = weights
                factor = gamma / np.sqrt(var + layer.epsilon)
                W, b, _ = layers[-1]
                layers[-1][:2] = W * factor, (b - mean) * factor + beta
            elif isinstance(layer, keras.layers.Activation):
                layers[-1][2] = layer.activation.__name__
            else:
                raise TypeError(f"cannot convert a {type(layer).__name__} layer")
        return cls(layers)

    @property
    def n_outputs(self):
        return self.layers[-1][0].shape[1]

    def __call__(self, X):
        """Forward pass of ``X``, in float64 for float64 input, else float32.

        Float64 input is evaluated in float64 so that a row's output does not
        depend on which other rows share its batch (float32 matrix products
        differ at the 1e-7 level between batch shapes).
        """
        dtype = np.float64 if np.asarray(X).dtype == np.float64 else np.float32
        Z = np.asarray(X, dtype=dtype)
        for W, b, act in self.layers:
            Z = Z @ W.astype(dtype, copy=False)
            Z += b.astype(dtype, copy=False)  # in place: one pass fewer per layer
            Z = ACTIVATIONS[act](Z)
        return Z


def _split_validation(n_samples, validation_fraction, rng):
    """Row numbers for training and validation (empty when too few rows)."""
    n_val = int(validation_fraction * n_samples)
    if n_val < 1 or n_samples - n_val < 1:
        return np.arange(n_samples), np.arange(0)
    perm = rng.permutation(n_samples)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _epoch_runner(model, loss, optimizer, X, Y, val_rows, batch_size, cache_key=None):
    """``run(order)``: one epoch of training on the rows ``order`` of ``X`` and
    ``Y``, in consecutive batches of ``batch_size`` (the last one may be
    smaller), then the loss on the validation rows ``val_rows`` (the same way,
    the network in inference mode); returns ``{'loss', 'val_loss'}``, each
    the mean of its batches' losses weighted by their rows, as Keras' ``fit``
    reports them.

    On JAX, each epoch is one compiled call (:class:`_JaxEpochs`; with a
    ``cache_key``, programs compiled for an earlier network of the same key
    are used again, see :func:`_shared_programs`); on other backends, one
    ``model.fit`` of one epoch.
    """
    if _compiled_epochs(import_keras()):
        return _JaxEpochs(model, loss, optimizer, X, Y, val_rows, batch_size, cache_key)
    model.compile(optimizer=optimizer, loss=loss)
    validation = (X[val_rows], Y[val_rows]) if len(val_rows) else None

    def run(order):
        logs = model.fit(
            X[order], Y[order], batch_size=batch_size, epochs=1, shuffle=False,
            validation_data=validation, validation_batch_size=batch_size, verbose=0,
        ).history
        return {key: float(values[-1]) for key, values in logs.items()}

    return run


def _compiled_epochs(keras):
    """Whether epochs run as one compiled call each (the JAX backend)."""
    return keras.backend.backend() == "jax"


#: Jitted epochs kept for later fits (see :func:`_shared_programs`): at most
#: this many networks' programs, the least recently used dropped first.
_PROGRAMS_KEPT = 16
_program_cache, _program_cache_lock = OrderedDict(), threading.Lock()


def _shared_programs(key, build):
    """``build()`` (a network's jitted epochs), or what it gave for an earlier
    network of the same ``key``; None: not kept.

    JAX compiles a jitted function once per shapes of its arguments, but a
    new network is a new function: every fit traced and compiled its epochs
    again (a ``ClusterFilteredKNN`` fit of 1,437 digits took 1.41 s, 0.91 s
    of it compiling). The programs read the weights and the optimizer's state
    as arguments and close over the network's layers, its loss and the
    optimizer's settings only, so a later network with the same ``key``
    (which the caller makes determine those: see :func:`train`) runs the
    same programs, compiled once per shapes of its data.
    """
    if key is None:
        return build()
    with _program_cache_lock:
        programs = _program_cache.pop(key, None)
    if programs is None:
        programs = build()
    with _program_cache_lock:
        _program_cache[key] = programs
        while len(_program_cache) > _PROGRAMS_KEPT:
            _program_cache.popitem(last=False)
    return programs


def _network_layout(model, optimizer):
    """What a compiled epoch takes from ``model`` and ``optimizer`` beyond
    its caller's ``cache_key``: the variables' shapes and dtypes, in the
    order the programs receive their values, and the batch normalisations'
    momentum (set by :func:`train` for each fit)."""
    groups = (model.trainable_variables, model.non_trainable_variables, optimizer.variables)
    return (tuple(tuple((tuple(v.shape), str(v.dtype)) for v in group) for group in groups),
            tuple(float(layer.momentum) for layer in _batch_norm_layers(model)))


class _JaxEpochs:
    """Training epochs on JAX, each one compiled call: ``jax.lax.scan`` of the
    training step over the epoch's batches, with Keras' stateless API
    (``stateless_call``, the optimizer's ``stateless_apply``).

    The same steps as ``model.fit`` (the loss a batch's mean, Adam's update),
    without the Python that ``fit`` runs between two steps to feed them: that
    kept a second core 20-25% busy beside JAX's own thread, so that two
    networks trained side by side on two cores (two Dask workers) took
    1.13-1.32x as long per epoch as alone; now 1.04-1.08x (a router on
    100,000 x 128 rows: 0.72 s an epoch alone, 0.75-0.78 s side by side).
    """

    def __init__(self, model, loss, optimizer, X, Y, val_rows, batch_size, cache_key=None):
        import jax.numpy as jnp

        optimizer.build(model.trainable_variables)
        self.model, self.optimizer, self.batch_size = model, optimizer, batch_size
        self.X = jnp.asarray(X)
        self.Y = self.X if Y is X else jnp.asarray(Y)
        self.val_rows = np.asarray(val_rows, dtype=np.int32)
        key = None if cache_key is None else (cache_key, _network_layout(model, optimizer))
        self._train, self._evaluate = _shared_programs(
            key, lambda: self._programs(model, loss, optimizer))

    @staticmethod
    def _programs(model, loss, optimizer):
        """The jitted training and evaluation epochs of ``model`` (closing
        over it, ``loss`` and ``optimizer``; the variables' values are
        arguments)."""
        import jax
        import jax.numpy as jnp

        keras = import_keras()
        if isinstance(loss, str):
            loss = keras.losses.get(loss)
        if not isinstance(loss, keras.losses.Loss):
            per_row = loss

            def loss(y_true, y_pred):
                return keras.ops.mean(per_row(y_true, y_pred))

        def batch_loss(trainable, non_trainable, rows, X, Y, training):
            y_pred, non_trainable = model.stateless_call(
                trainable, non_trainable, X[rows], training=training)
            return loss(Y[rows], y_pred), non_trainable

        def step(state, rows, X, Y):
            trainable, non_trainable, opt = state
            (value, non_trainable), grads = jax.value_and_grad(batch_loss, has_aux=True)(
                trainable, non_trainable, rows, X, Y, True)
            trainable, opt = optimizer.stateless_apply(opt, grads, trainable)
            return (trainable, non_trainable, opt), value

        def evaluate(state, rows, X, Y):
            return state, batch_loss(state[0], state[1], rows, X, Y, False)[0]

        def batches(run, state, full, last, X, Y):
            # The full batches in a scan, then the last, smaller one: one
            # program (one compilation) per epoch's shapes.
            total = 0.0
            if full.shape[0]:
                state, values = jax.lax.scan(lambda state, rows: run(state, rows, X, Y),
                                             state, full)
                total = jnp.sum(values) * full.shape[1]
            if last.shape[0]:
                state, value = run(state, last, X, Y)
                total = total + value * last.shape[0]
            return state, total

        return (jax.jit(lambda *args: batches(step, *args)),
                jax.jit(lambda *args: batches(evaluate, *args)))

    def _run(self, run, state, order):
        """``run`` over the batches of ``order``: the state after them and their
        mean loss, weighted by their rows."""
        n_full = len(order) // self.batch_size * self.batch_size
        full = order[:n_full].reshape(-1, self.batch_size)
        state, total = run(state, full, order[n_full:], self.X, self.Y)
        return state, float(total) / len(order)

    def __call__(self, order):
        model, optimizer = self.model, self.optimizer
        variables = (model.trainable_variables, model.non_trainable_variables,
                     optimizer.variables)
        state = tuple([v.value for v in group] for group in variables)
        state, loss = self._run(self._train, state, np.asarray(order, dtype=np.int32))
        for group, values in zip(variables, state):
            for variable, value in zip(group, values):
                variable.assign(value)
        logs = {"loss": loss}
        if len(self.val_rows):
            logs["val_loss"] = self._run(self._evaluate, state, self.val_rows)[1]
        return logs


def train(model, loss, X, Y, *, params, rng, owner, batch_order=None, cache_key=None):
    """Train ``model`` with Adam, seeded shuffling and early stopping.

    Parameters
    ----------
    model : keras.Model
    loss : str, keras.losses.Loss or callable
        A Keras loss's name or object, or ``loss(y_true, y_pred)`` giving a
        loss per row (a batch's loss is their mean, as in Keras).
    X, Y : ndarrays
        Inputs and targets (float32).
    params : dict
        ``epochs``, ``batch_size``, ``learning_rate``,
        ``validation_fraction``, ``n_iter_no_change``, ``tol``, ``verbose``
        and optionally ``learning_rate_schedule``: ``'constant'`` (default:
        stop once the monitored loss has not improved by ``tol`` for
        ``n_iter_no_change`` epochs) or ``'adaptive'`` (the first
        ``LR_DROPS`` times, go back to the best weights and divide the learning
        rate by ``LR_DIVISOR`` instead of stopping; the patience becomes
        ``n_iter_no_change // LR_PATIENCE_DIVISOR``).
    rng : numpy.random.RandomState
        Source of the validation split and the per-epoch shuffles.
    owner : str
        Name used as the ``[owner]`` prefix of progress messages and warnings.
    batch_order : callable, default=None
        ``batch_order(rows, rng)`` returns the order in which to visit
        ``rows`` in an epoch, consecutive ``batch_size`` slices forming the
        batches (e.g. P classes x K examples). A random permutation if None;
        validation rows are ordered once the same way.
    cache_key : hashable, default=None
        Names ``model``'s layers (their kinds, sizes and activations, and
        how they connect) and ``loss`` (with its settings): networks trained
        with equal keys, and variables of the same shapes, share compiled
        epochs (on JAX, see :func:`_shared_programs`). None: compiled for
        this network alone.

    A network with ``BatchNormalization`` layers gets the momentum of
    :func:`batch_norm_momentum`, and each epoch's last, incomplete batch is
    left out (other rows each epoch, the order being redrawn): a batch of a few
    rows would pull the running statistics towards its own. All rows are kept
    when they fill less than one batch.

    Returns
    -------
    history : dict of lists
        ``'loss'`` per epoch, ``'val_loss'`` when a validation set is used, and
        ``'learning_rate'`` with the adaptive schedule. The best weights
        (lowest monitored loss) are restored at the end.
    """
    keras = import_keras()
    train_rows, val_rows = _split_validation(len(X), params["validation_fraction"], rng)
    batch_size = min(params["batch_size"], len(train_rows))
    batch_norms = _batch_norm_layers(model)
    for layer in batch_norms:
        layer.momentum = batch_norm_momentum(len(train_rows), batch_size)
    optimizer = keras.optimizers.Adam(learning_rate=params["learning_rate"])
    drops_left = LR_DROPS if params.get("learning_rate_schedule") == "adaptive" else 0
    patience = params["n_iter_no_change"]
    if batch_order is None:
        def batch_order(rows, rng):
            return rows[rng.permutation(len(rows))]
    val_rows = batch_order(val_rows, rng) if len(val_rows) else val_rows
    run_epoch = _epoch_runner(model, loss, optimizer, X, Y, val_rows, batch_size,
                              cache_key)
    monitor = "val_loss" if len(val_rows) else "loss"
    history = {"loss": []} if not len(val_rows) else {"loss": [], "val_loss": []}
    if drops_left:
        history["learning_rate"] = []
    best, best_weights, stale = np.inf, None, 0
    for epoch in range(params["epochs"]):
        tic = time.perf_counter()
        order = batch_order(train_rows, rng)
        if batch_norms and len(order) > batch_size:
            order = order[: len(order) // batch_size * batch_size]
        logs = run_epoch(order)
        for key in ("loss", "val_loss"):
            if key in history:
                history[key].append(logs[key])
        if "learning_rate" in history:
            history["learning_rate"].append(float(optimizer.learning_rate))
        current = history[monitor][-1]
        if params["verbose"]:
            shown = ", ".join(f"{key}={vals[-1]:.5g}" for key, vals in history.items())
            print(
                f"[{owner}] epoch {epoch + 1}/{params['epochs']}: {shown} "
                f"({time.perf_counter() - tic:.2f} s)",
                flush=True,
            )
        if not np.isfinite(current):
            raise FloatingPointError(
                f"[{owner}] training diverged at epoch {epoch + 1} ({monitor}={current}); "
                "lower learning_rate."
            )
        stale = 0 if current < best - params["tol"] else stale + 1
        if current < best:
            best, best_weights = current, model.get_weights()
        if stale >= patience:
            if not drops_left:
                break
            # Back to the best weights, with a smaller step.
            model.set_weights(best_weights)
            optimizer.learning_rate.assign(float(optimizer.learning_rate) / LR_DIVISOR)
            drops_left -= 1
            stale = 0
            patience = max(1, params["n_iter_no_change"] // LR_PATIENCE_DIVISOR)
    else:
        # Epochs ran out. Still improving only if one of the last two epochs
        # beat the best by tol: a Fashion-MNIST router whose best epoch was
        # its 28th of 30 warned, and with more epochs it stopped at 33 with
        # the same weights.
        if stale < 2:
            warnings.warn(
                f"[{owner}] stopped after epochs={params['epochs']} while {monitor} was "
                "still improving; consider raising epochs.",
                ConvergenceWarning,
                stacklevel=2,
            )
    model.set_weights(best_weights)
    return history
