"""What names and describes a deployed function, shared by the aws backend and ``deploy``.

`dask_lambda.backends` (the client side) and `dask_lambda.deploy` both import this package
and never each other.

:mod:`.names`
    every resource's name and Lambda's limits, from (bucket, prefix, function);
:mod:`.compat`
    the runtimes and library versions the deployed handler must match;
:mod:`.ping`
    the ping event and how its answer is read;
:mod:`.states`
    waiting until the function is Active, and waking an Inactive one;
:mod:`.region`
    the region when none is given.
"""
