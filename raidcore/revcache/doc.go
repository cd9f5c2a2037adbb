// Package revcache is the proxy's revision cache: object revisions shared
// by all of an array's clients, bounded in bytes (LRU), filled by loads
// and by what the proxy itself commits, and kept exact by the stream of
// announced transactions, the same stream the clients' own caches are
// invalidated by.
//
// Exactness. A revision is cached with the interval of transactions it
// is valid for: [tid, end), end zero while it is current. The array
// applies every announced transaction to the cache (Announce) before it
// advances its announced position, under the same lock, so at any moment
// the cache's position (Through) is either the array's or behind it. A
// current read hits only when the reader's snapshot is exactly the
// cache's position and the revision is still current there; a historical
// read hits only on a revision whose end is known. A backend's answer to
// a current read is current as of the reader's snapshot, which may lie
// before transactions the cache has applied since: Fill looks for the
// first of them that changed the object (the cache keeps the recent
// announced transactions for that) and closes the revision there; when
// it cannot know (the snapshot is older than what it kept, or the cache
// started over in between) it keeps nothing. A historical answer is kept
// only when its end lies within the snapshot (committed history). If the
// announced stream jumps (a backend's history taken over, re-assembly),
// the cache starts over. So a hit gives what an up-to-date optimal
// backend would answer at the reader's snapshot, and never crosses to a
// backend (architecture invariant 5).
//
// Not cached: errors (POSKeyError), loadSerial answers (their end is
// unknown; loadSerial does hit cached revisions), spooled records. Pack
// through the array clears the cache (a pack may remove revisions and
// unreachable objects); a pack through another proxy of a cluster leaves
// this one's cached history, which is then more than the backends keep,
// never different from it.
package revcache
