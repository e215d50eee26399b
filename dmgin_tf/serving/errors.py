"""`ServingError`: a failure with the gRPC status code the client should see."""
from __future__ import annotations

import grpc


class ServingError(Exception):
    """Raised inside the dev server; the servicer turns it into `context.abort(code, msg)`.

    Codes used (same meaning as in TF Serving):
      INVALID_ARGUMENT   bad request: missing/extra input, wrong dtype or shape,
                         malformed tensor or tf.Example, unknown or repeated
                         output_filter alias, unknown version label;
      FAILED_PRECONDITION unknown signature;
      NOT_FOUND          unknown model or version;
      RESOURCE_EXHAUSTED request larger than the server's batch limit;
      UNAVAILABLE        batch queue full or server stopping (retryable);
      INTERNAL           the model itself failed.
    """

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
