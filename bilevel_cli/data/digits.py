"""scikit-learn's bundled 8×8 handwritten digits (UCI optdigits test set): MNIST's offline stand-in.

The 1797 images ship inside scikit-learn, so they load with no network and no data folder; a run meant for MNIST can
be tried on them anywhere. Their pixels count inked cells of a 4×4 block, 0..16, and are scaled to 0..255 so that the
same preprocessing serves both data sets.
"""

import numpy as np
import torch

from bilevel_cli.errors import UserError

LEVELS = 16  # the largest pixel value of the bundled data


def load_digits() -> dict[str, torch.Tensor]:
    """{"images": uint8 (1797, 1, 8, 8) in 0..255, "labels": int64 (1797,)} in scikit-learn's order."""
    # Imported here: scikit-learn takes a second to import and only this data set needs it.
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:
        raise UserError("the digits data set needs scikit-learn, which is not installed; pip install scikit-learn "
                        "or choose another data set") from error
    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255 / LEVELS)).astype(np.uint8)
    return {"images": torch.from_numpy(images[:, None]), "labels": torch.from_numpy(bunch.target.astype(np.int64))}
