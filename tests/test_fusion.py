import numpy as np
import pytest

from rerankit.fusion import ranks, rrf

pytestmark = pytest.mark.smoke


def test_ranks_and_hand_computed_rrf():
    assert ranks(np.array([0.1, 0.9, 0.5])).tolist() == [3, 1, 2]
    assert ranks(np.array([[1.0, 2.0], [5.0, 0.0]])).tolist() == [[2, 1], [1, 2]]
    a, b = np.array([3.0, 2.0, 1.0]), np.array([1.0, 2.0, 3.0])
    fused = rrf([a, b], k=60)
    assert fused.tolist() == pytest.approx([1 / 61 + 1 / 63, 2 / 62, 1 / 63 + 1 / 61])
    # second in both rankings (2/62) beats first in one and last in the other (1/61 + 1/65)
    fused = rrf([np.array([5.0, 4, 3, 2, 1]), np.array([1.0, 4, 3, 2, 5])])
    assert np.argmax(fused) == 1
