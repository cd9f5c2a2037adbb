package zeoserver

// SetVoteRepliedHook makes every vote goroutine call f after it has sent
// its reply; the returned function restores the previous hook.
func SetVoteRepliedHook(f func()) (restore func()) {
	old := testHookVoteReplied
	testHookVoteReplied = f
	return func() { testHookVoteReplied = old }
}
