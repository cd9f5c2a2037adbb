package pickle

import (
	"fmt"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// References returns the oids a ZODB data record refers to strongly, in
// pickle order and with duplicates, like ZODB.serialize.referencesf: a
// record is two pickles (class metadata, then state); persistent ids of
// the form (oid, class) or a bare oid count, the list forms (weak
// references ['w', ...], cross-database ['m', ...] and ['n', ...]) do not.
//
// Unlike referencesf under Python 3, an oid pickled by Python 2 as a str
// with bytes above 0x7f is found instead of raising: for garbage
// collection, finding a reference is always the safe side.
func References(record []byte) ([]zodb.OID, error) {
	var refs []zodb.OID
	collect := func(pid any) (any, error) {
		var oidV any
		switch x := pid.(type) {
		case Tuple:
			if len(x) == 0 {
				return nil, fmt.Errorf("empty persistent id")
			}
			oidV = x[0]
		case []byte, string:
			oidV = x
		case List:
			return nil, nil // weak or cross-database reference
		default:
			return nil, fmt.Errorf("persistent id of type %s", TypeName(pid))
		}
		var b []byte
		switch o := oidV.(type) {
		case []byte:
			b = o
		case string:
			b = []byte(o)
		}
		if len(b) != 8 {
			return nil, fmt.Errorf("persistent id with an oid of %d bytes", len(b))
		}
		refs = append(refs, zodb.OID(b))
		return nil, nil
	}
	// ZODB writes both pickles with one pickler, so the state pickle may
	// refer to the memo of the class pickle: one decoder reads both.
	d := pickleDecoder{data: record, budget: minNodeBudget + 4*len(record), persistent: collect, lenient: true}
	for i := 0; i < 2 && d.pos < len(record); i++ {
		if _, err := d.run(); err != nil {
			return nil, fmt.Errorf("pickle: references: pickle %d: %w", i+1, err)
		}
	}
	return refs, nil
}
