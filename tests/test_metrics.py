"""Metrics against hand-computed cases (spec §4.2)."""

import numpy as np
import pytest
import torch

from hpnb.metrics import IGNORE, SegmentationMetric, confusion_matrix, matched_confusion, remap, scores


def test_confusion_matrix_counts_and_ignores():
    pred = torch.tensor([[0, 1, 1], [2, 2, 0]])
    gt = torch.tensor([[0, 1, IGNORE], [2, 1, 5]])  # -1 and out-of-range 5 are ignored
    conf = confusion_matrix(pred, gt, n_pred=3, n_classes=3)
    expected = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    assert torch.equal(conf, expected)


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(3), 2, 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        confusion_matrix(torch.tensor([3]), torch.tensor([0]), 2, 2)


def test_scores_hand_computed():
    # rows = predicted class, cols = GT class
    conf = np.array([[3, 1], [0, 4]])
    s = scores(conf)
    # TP = 3, 4; total 8 -> acc 7/8. IoU0 = 3/(3+1+0) = .75; IoU1 = 4/(4+0+1) = .8
    assert s.acc == pytest.approx(87.5)
    assert s.iou == pytest.approx([75.0, 80.0])
    assert s.miou == pytest.approx(77.5)


def test_miou_skips_classes_that_never_occur():
    conf = np.array([[5, 0, 0], [1, 2, 0], [0, 0, 0]])  # class 2: never in GT, never predicted -> NaN, skipped
    s = scores(conf)
    assert np.isnan(s.iou[2])
    assert s.miou == pytest.approx(100 * (5 / 6 + 2 / 3) / 2)


def test_hungarian_recovers_a_permutation():
    gt = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    pred = torch.tensor([2, 2, 0, 0, 1, 1, 0])  # cluster 2 = class 0, cluster 0 = class 1, cluster 1 = class 2
    m = SegmentationMetric(3)
    m.update(pred, gt)
    assert m.mapping().tolist() == [1, 2, 0]
    s = m.compute()
    assert s.acc == pytest.approx(100 * 6 / 7)
    assert torch.equal(remap(pred, m.mapping()), torch.tensor([0, 0, 1, 1, 2, 2, 1]))


def test_extra_clusters_count_as_errors():
    gt = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 1, 1])  # cluster 2 is left unmatched: its pixel is a miss for class 0
    m = SegmentationMetric(2, n_pred=3)
    m.update(pred, gt)
    assert m.mapping().tolist()[:2] == [0, 1] and m.mapping()[2] == IGNORE
    s = m.compute()
    assert s.acc == pytest.approx(75.0)
    assert s.iou == pytest.approx([50.0, 100.0])  # class 0: TP 1, FN 1


def test_matched_confusion_sums_rows():
    conf = np.array([[1, 2], [3, 4], [5, 6]])
    assert matched_confusion(conf, np.array([1, -1, 0])).tolist() == [[5, 6], [1, 2]]


def test_without_hungarian_the_identity_is_used():
    m = SegmentationMetric(2, hungarian=False)
    m.update(torch.tensor([1, 0]), torch.tensor([0, 1]))
    assert m.compute().acc == 0.0


def test_patch_labels_take_the_majority_with_ties_to_ignore_then_the_smaller_class():
    from hpnb.metrics import patch_labels

    labels = torch.tensor([[[0, 0, 1, 1], [0, -1, 1, 2], [2, 2, -1, -1], [3, 3, 1, 3]]])
    # patches: {0,0,0,-1} -> 0 | {1,1,1,2} -> 1 | {2,2,3,3} tie -> 2 | {-1,-1,1,3} -> ignore
    assert patch_labels(labels, (2, 2)).tolist() == [[[0, 1], [2, -1]]]
    tie = torch.tensor([[[-1, 4], [4, -1]]])
    assert patch_labels(tie, (1, 1)).tolist() == [[[-1]]]


def test_cluster_scores_are_the_cosines_of_upsampled_codes_and_the_fast_form_has_their_argmax():
    import torch.nn.functional as F

    from hpnb.evaluate import cluster_scores

    g = torch.Generator().manual_seed(0)
    codes = torch.randn(2, 16, 5, 7, generator=g)
    centroids = F.normalize(torch.randn(6, 16, generator=g), dim=1)
    up = F.normalize(F.interpolate(codes, size=(33, 41), mode="bilinear", align_corners=False), dim=1)
    reference = torch.einsum("bkhw,ck->bchw", up, centroids)  # what the official evaluation computes
    assert torch.allclose(cluster_scores(codes, centroids, (33, 41)), reference, atol=1e-6)
    fast = cluster_scores(codes, centroids, (33, 41), cosine=False)
    assert torch.equal(fast.argmax(1), reference.argmax(1))
    assert not torch.allclose(fast, reference, atol=1e-2)  # the fast form is not the cosine itself
