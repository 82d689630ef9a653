"""HTTP/1.1 for Lambda's Invoke API, written for the per-task path (no botocore on it).

:mod:`.lambda_api`
    `LambdaInvoker`: one function's synchronous invokes, SigV4 signed, on an `HttpPool`.
:mod:`.pool`
    `HttpPool`: keep-alive connections to one endpoint, and what a failed request means
    (`NothingSent`, `ConnectionLost`, `ReadTimeout`).
:mod:`.wire`
    HTTP/1.1 messages: heads parsed and written, response bodies read (the pool's client
    side and the simulated Lambda's server side share it).
:mod:`.tls`
    A TLS client connection whose handshake runs off the event loop.
:mod:`.sigv4`
    AWS Signature Version 4.
:mod:`.sockets`
    TCP keepalive, and the open-files limit a pool of sockets needs.
"""
