package node

// FailureKind exports failureKind to the tests.
var FailureKind = failureKind

var RetryDelay = retryDelay
