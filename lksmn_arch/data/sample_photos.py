"""The sample photos that scikit-image ships (always installed): the demo's training and held-out photos."""
from pathlib import Path
from typing import List, Sequence

import cv2
import numpy as np

# scikit-image's sample photos that load without a download. Held out for testing: three natural photos.
TEST_PHOTOS = ('astronaut', 'coffee', 'chelsea')
TRAIN_PHOTOS = ('rocket', 'stereo_motorcycle', 'hubble_deep_field', 'immunohistochemistry', 'retina', 'camera',
                'brick', 'grass', 'gravel', 'coins', 'moon', 'page', 'text', 'colorwheel')

def _photo(name: str) -> List[np.ndarray]:
    """The photo(s) of that name as BGR uint8 (grey ones replicated to 3 channels; stereo gives both views)."""
    from skimage import data
    loaded = getattr(data, name)()
    images = list(loaded[:2]) if isinstance(loaded, tuple) else [loaded]
    out = []
    for image in images:
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        out.append(np.ascontiguousarray(image[..., 2::-1]).astype(np.uint8))
    return out


def write_photos(folder: Path, names: Sequence[str]) -> List[Path]:
    """Save the named sample photos as PNG in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        for view, image in enumerate(_photo(name)):
            path = folder / (f'{name}.png' if view == 0 else f'{name}_{view}.png')
            cv2.imwrite(str(path), image)
            written.append(path)
    return written
