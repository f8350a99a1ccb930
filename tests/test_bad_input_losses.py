"""Bad input to the loss modules gets a clear error; their inputs are converted explicitly and left
untouched, and a failed call leaves no stale gradient behind."""
import math

import numpy as np
import pytest

from fuseprop import losses

from helpers import negative_stride, strided, transposed, unaligned

_LOGITS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10  # (B, C) = (4, 3)


# ---------------------------------------------------------------------------------------------
# losses


_LOSSES = {
    "CrossEntropyLoss": (losses.CrossEntropyLoss, "logits", np.array([0, 2, 1, 2])),
    "MSELoss": (losses.MSELoss, "pred", np.zeros((4, 3), np.float32)),
    "BCEWithLogitsLoss": (losses.BCEWithLogitsLoss, "logits", np.full((4, 3), 0.5, np.float32)),
}


def _loss_layout_cases():
    forms = {"strided": strided, "transposed": transposed, "negative_stride": negative_stride,
             "unaligned": unaligned}
    for loss_name, (_, _, target) in _LOSSES.items():
        for arg in ("pred", "target") if target.ndim == 2 else ("pred",):  # class labels: see the functional tests
            for form, transform in forms.items():
                yield pytest.param(loss_name, arg, transform, id=f"{loss_name}-{arg}-{form}")


@pytest.mark.parametrize("loss_name, arg, form", list(_loss_layout_cases()))
def test_loss_input_layout_is_converted_and_left_untouched(loss_name, arg, form):
    cls, _, target = _LOSSES[loss_name]
    pred = _LOGITS.copy()
    args = {"pred": pred, "target": target}
    args[arg] = form(args[arg])
    before = np.array(args[arg], copy=True)
    loss_fn = cls()
    loss = loss_fn(args["pred"], args["target"])
    expected_fn = cls()
    assert loss == expected_fn(pred, target)
    np.testing.assert_array_equal(loss_fn.backward(), expected_fn.backward())
    np.testing.assert_array_equal(args[arg], before)


@pytest.mark.parametrize("loss_name", list(_LOSSES))
@pytest.mark.parametrize("pred, got", [
    pytest.param(np.zeros((4, 3), np.int64), "int64", id="int64"),
    pytest.param(np.zeros((4, 3), np.float16), "float16", id="float16"),
    pytest.param([[0.0] * 3] * 4, "list", id="list"),
])
def test_loss_pred_must_be_a_float_array(loss_name, pred, got):
    cls, name, target = _LOSSES[loss_name]
    with pytest.raises(TypeError, match=rf"^{name} must be a float32 or float64 numpy\.ndarray, got {got}"):
        cls()(pred, target)


@pytest.mark.parametrize("target", [np.array([0.0, 2.0, 1.0, 2.0]), np.array([0, 2, 1, 2], np.float32)],
                         ids=["float64", "float32"])
def test_cross_entropy_loss_takes_labels_stored_as_whole_floats(target):
    lf, li = losses.CrossEntropyLoss(), losses.CrossEntropyLoss()
    assert lf(_LOGITS, target) == li(_LOGITS, target.astype(np.int64))
    np.testing.assert_array_equal(lf.backward(), li.backward())


@pytest.mark.parametrize("target, where", [
    pytest.param(np.array([0.0, 1.7, 1.0, 2.0]), r"labels\[1\] = np.float64\(1.7\)", id="fraction"),
    pytest.param(np.array([0.0, 1.0, np.nan, 2.0], np.float32), r"labels\[2\] = np.float32\(nan\)", id="nan"),
    pytest.param(np.array([np.inf, 1.0, 1.0, 2.0]), r"labels\[0\] = np.float64\(inf\)", id="inf"),
])
def test_cross_entropy_loss_float_labels_that_are_not_whole_are_refused(target, where):
    # Before: fit truncated 1.7 to class 1 in silence.
    with pytest.raises(ValueError, match=rf"^labels must be class indices \(whole numbers\), got {where} in a "):
        losses.CrossEntropyLoss()(_LOGITS, target)


def test_cross_entropy_loss_bool_labels_are_a_type_error():
    with pytest.raises(TypeError, match=r"^labels must be integer class indices, got dtype bool"):
        losses.CrossEntropyLoss()(_LOGITS, np.array([True, False, True, False]))


@pytest.mark.parametrize("target", [
    pytest.param(np.array([0, 3, 1, 2]), id="equal_to_C"),
    pytest.param(np.array([0, -1, 1, 2]), id="negative"),
    pytest.param(np.array([0, 1, 2]), id="too_short"),
    pytest.param(np.array([[0], [1], [2], [2]]), id="column"),
])
def test_cross_entropy_loss_bad_target_is_a_value_error(target):
    with pytest.raises(ValueError, match=r"^(labels|target) must "):
        losses.CrossEntropyLoss()(_LOGITS, target)


@pytest.mark.parametrize("target", [
    pytest.param(np.array([0, 3, 1, 2]), id="out_of_range"),
    pytest.param(np.array([0, 1, 2]), id="wrong_shape"),
])
def test_cross_entropy_loss_bad_labels_message_names_labels(target):
    # CrossEntropyLoss()(logits, labels): every message says "labels", as the argument is called
    with pytest.raises(ValueError, match=r"^labels must "):
        losses.CrossEntropyLoss()(_LOGITS, target)


@pytest.mark.parametrize("loss_name", ["MSELoss", "BCEWithLogitsLoss"])
def test_elementwise_loss_target_of_wrong_shape_is_an_error(loss_name):
    cls, name, _ = _LOSSES[loss_name]
    with pytest.raises(ValueError, match=r"^target must have"):
        cls()(_LOGITS, np.zeros((4, 2), np.float32))


@pytest.mark.parametrize("loss_name", list(_LOSSES))
def test_loss_backward_before_call_is_an_error(loss_name):
    cls, _, _ = _LOSSES[loss_name]
    with pytest.raises(RuntimeError, match=rf"^{loss_name}\.backward called before the loss was computed"):
        cls().backward()


@pytest.mark.parametrize("loss_name", list(_LOSSES))
def test_loss_backward_after_a_failed_call_gives_no_stale_gradient(loss_name):
    cls, _, target = _LOSSES[loss_name]
    loss_fn = cls()
    loss_fn(_LOGITS, target)
    with pytest.raises(TypeError):
        loss_fn(_LOGITS.astype(np.int64), target)
    with pytest.raises(RuntimeError, match=r"backward called before the loss was computed"):
        loss_fn.backward()


@pytest.mark.parametrize("loss_name", list(_LOSSES))
def test_loss_rejects_unknown_reduction(loss_name):
    cls, _, _ = _LOSSES[loss_name]
    with pytest.raises(ValueError, match=r"^reduction must be 'mean' or 'sum', got 'none'"):
        cls(reduction="none")


@pytest.mark.parametrize("label_smoothing", [-0.1, 1.01, math.nan])
def test_cross_entropy_loss_rejects_label_smoothing_outside_0_1(label_smoothing):
    with pytest.raises(ValueError, match=r"^label_smoothing must be in \[0, 1\], got"):
        losses.CrossEntropyLoss(label_smoothing=label_smoothing)


def test_loss_empty_batch_with_mean_is_an_error():
    with pytest.raises(ValueError, match=r"empty batch has no mean loss"):
        losses.CrossEntropyLoss()(np.zeros((0, 3), np.float32), np.zeros(0, np.int64))
