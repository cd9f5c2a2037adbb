// Package pickle reads and writes Python pickles the way ZODB and ZEO use
// them: values (Tuple, List, Dict, Global and Go scalars), an encoder that
// writes exactly the protocol-3 bytes ZEO's fast-mode pickler writes, a
// decoder for protocols 0-5 with strict limits (depth, size, memo) that
// never executes anything (globals become inert Global values), and
// References, the equivalent of ZODB.serialize.referencesf for pack's
// garbage collection.
package pickle
