"""conductivity_tf: effective conductivity of 3-D voxel microstructures, by physics and by a 3-D CNN.

Importing the package is light: it never imports TensorFlow. The TensorFlow-using modules
(``dataset``'s reader, ``model``, ``strategies``, ``train``, ``predict``) import it through
``conductivity_tf.keras_compat`` only.
"""

__version__ = "0.1.0"
