package wire

import "github.com/zeoraid/zeoraid/raidcore/zodb"

func readOnly() error { return zodb.NewReadOnlyError() }
