package proxy

// FailureKind exports failureKind to the tests.
var FailureKind = failureKind

var RetryDelay = retryDelay
