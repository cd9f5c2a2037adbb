package node

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
)

// extensions are gocept.zeoraid's management methods, callable by any ZEO
// client of the storage (ClientStorage's extension-method mechanism), with
// its answer shapes.
func (p *Proxy) extensions() map[string]zeoserver.ExtensionFunc {
	name := func(call zeoserver.ExtensionCall) (string, error) {
		if len(call.Args) != 1 {
			return "", zodb.NewTypeError("expected one argument, the backend name")
		}
		n, err := wire.AsText(call.Args[0])
		if err != nil {
			return "", zodb.NewTypeError("backend name: %v", err)
		}
		return n, nil
	}
	return map[string]zeoserver.ExtensionFunc{
		"raid_status": func(ctx context.Context, call zeoserver.ExtensionCall) (any, error) {
			a, err := p.Array(call.Storage)
			if err != nil {
				return nil, zodb.NewValueError("%v", err)
			}
			return a.Status().Status, nil
		},
		"raid_details": func(ctx context.Context, call zeoserver.ExtensionCall) (any, error) {
			a, err := p.Array(call.Storage)
			if err != nil {
				return nil, zodb.NewValueError("%v", err)
			}
			d := a.Details()
			keys := make([]string, 0, len(d))
			for k := range d {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			out := wire.Dict{}
			for _, k := range keys {
				out = append(out, wire.Item{Key: k, Value: d[k]})
			}
			return out, nil
		},
		"raid_disable": func(ctx context.Context, call zeoserver.ExtensionCall) (any, error) {
			if call.ReadOnly {
				return nil, zodb.NewReadOnlyError()
			}
			n, err := name(call)
			if err != nil {
				return nil, err
			}
			a, err := p.Array(call.Storage)
			if err != nil {
				return nil, zodb.NewValueError("%v", err)
			}
			if err := a.Disable(n, "operator (raid_disable over ZEO)", ""); err != nil {
				return nil, zodb.NewValueError("%v", err)
			}
			return fmt.Sprintf("disabled %q", n), nil
		},
		"raid_recover": func(ctx context.Context, call zeoserver.ExtensionCall) (any, error) {
			if call.ReadOnly {
				return nil, zodb.NewReadOnlyError()
			}
			n, err := name(call)
			if err != nil {
				return nil, err
			}
			if err := p.Recover(call.Storage, n, "operator (raid_recover over ZEO)", false); err != nil {
				return nil, zodb.NewValueError("%v", err)
			}
			return fmt.Sprintf("recovering %q", n), nil
		},
		"raid_reload": func(ctx context.Context, call zeoserver.ExtensionCall) (any, error) {
			if call.ReadOnly {
				return nil, zodb.NewReadOnlyError()
			}
			if p.cfg.Reload == nil {
				return nil, zodb.NewValueError("this proxy has no configuration file to reload")
			}
			rep, err := p.ReloadConfig(ctx)
			if err != nil {
				return nil, zodb.NewValueError("reload failed: %v", err)
			}
			return fmt.Sprintf("reloaded: added %s; removed %s", orNone(rep.Added), orNone(rep.Removed)), nil
		},
	}
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
