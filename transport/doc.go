// Package transport groups the wire protocols zeoraid speaks. Today that
// is ZEO 5 (sub-packages zeo/wire, zeo/zeoserver, zeo/zeoclient).
package transport
