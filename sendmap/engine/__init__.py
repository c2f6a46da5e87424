"""The engine that runs the stages, apart from the science and the per-block compute: the stage context
(:mod:`.context`), the stored data read a block at a time (:mod:`.data`), the result store (:mod:`.store`), block
execution on threads, processes or a dask cluster (:mod:`.execute`), resume records (:mod:`.resume`), the output
lock (:mod:`.lock`), code digests for the cache keys (:mod:`.codehash`), failures (:mod:`.failures`) and the
runner (:mod:`.runner`)."""
