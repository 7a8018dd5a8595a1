"""Image bytes to model input.

- `reasons`: why a file cannot be embedded, in words a person understands (pure Python: imports
  without TensorFlow);
- `image`: `decode_image`, the one decode function every engine shares (pure TensorFlow), with
  each format TensorFlow gets wrong fixed in a module of its own (`exif`, `bmp`, `webp`) and
  header reading in `binary`, the decompression-bomb check in `limits`;
- `pipeline`: the tf.data pipeline around it, and the per-file decoder other engines use.
"""
