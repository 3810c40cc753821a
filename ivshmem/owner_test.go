package ivshmem

import "testing"

// TestOwnerToken: an owner word carries side, boot tag and pid, each
// decoded as written; readers from before the boot tag still read the
// side from the upper half.
func TestOwnerToken(t *testing.T) {
	for _, o := range []Owner{
		{Side: SideHost, PID: 1},
		{Side: SideHost, PID: 1<<PIDBits - 1},
		{Side: SideGuest, PID: 812, Tag: 1},
		{Side: SideGuest, PID: 4194303, Tag: TagNested},
	} {
		v := o.Token()
		if got := decodeOwner(v); got != o {
			t.Errorf("%+v: decoded %+v", o, got)
		}
		if Side(v>>32) != o.Side {
			t.Errorf("%+v: side word %d", o, v>>32)
		}
	}
	if s := (Owner{Side: SideGuest, PID: 7, Tag: 3}).String(); s != "guest pid 7" {
		t.Errorf("String: %q", s)
	}
}

// TestBootTag: 1..TagNested-1, FNV-1a of the id folded, TagNone for none, and
// spread over the range by real-looking ids.
func TestBootTag(t *testing.T) {
	if BootTag("") != 0 {
		t.Error("empty id: want 0")
	}
	id := "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
	// pcapshim's boot_tag computes the same function (its test checks
	// it against zc's tag): here, against the definition.
	if got := BootTag(id); got != bootTagRef(id) {
		t.Errorf("BootTag(%q) = %d, reference %d", id, got, bootTagRef(id))
	}
	seen := map[uint32]bool{}
	for i := range 4096 {
		b := BootTag(id[:35] + string(rune('0'+i%10)) + string(rune('a'+i/10%26)) + string(rune('a'+i/260)))
		if b < 1 || b >= TagNested {
			t.Fatalf("tag %d out of range", b)
		}
		seen[b] = true
	}
	if len(seen) < 900 {
		t.Errorf("4096 ids gave only %d distinct tags of %d", len(seen), TagNested-1)
	}
}

// bootTagRef is FNV-1a written out from its definition, folded.
func bootTagRef(s string) uint32 {
	h := uint64(0x811c9dc5)
	for _, c := range []byte(s) {
		h = (h ^ uint64(c)) * 0x01000193 % (1 << 32)
	}
	return uint32(1 + h%1022)
}

// TestGuestOwnerGone: what a guest process can tell of a guest owner.
func TestGuestOwnerGone(t *testing.T) {
	alive := func(pid uint32) bool { return pid == 1 }
	g := func(pid, tag uint32) Owner { return Owner{Side: SideGuest, PID: pid, Tag: tag} }
	for _, c := range []struct {
		mine        uint32
		o           Owner
		known, gone bool
	}{
		{5, g(9, 5), true, true},  // this boot, pid gone
		{5, g(1, 5), true, false}, // this boot, alive
		{5, g(1, 6), true, true},  // another boot: its pid is not looked at
		{5, g(9, TagNone), false, false},
		{5, g(9, TagNested), false, false},
		{TagNone, g(9, 5), false, false},
		{TagNested, g(9, 5), false, false},
	} {
		known, gone := GuestOwnerGone(c.mine, c.o, alive)
		if known != c.known || gone != c.gone {
			t.Errorf("mine %d, owner %+v: known %v gone %v, want %v %v", c.mine, c.o, known, gone, c.known, c.gone)
		}
	}
}

// TestNSTag: a nested pid namespace's number, one up, when it fits; the
// initial namespace's fixed inode and numbers past the tags do not.
func TestNSTag(t *testing.T) {
	for _, c := range []struct {
		ino uint64
		tag uint32
	}{
		{0xF0000000, 1},
		{4026532179, 340},
		{0xF0000000 + TagNested - 2, TagNested - 1},
		{0xF0000000 + TagNested - 1, TagNested},
		{0xEFFFFFFC, TagNested}, // the initial pid namespace
	} {
		if got := NSTag(c.ino); got != c.tag {
			t.Errorf("NSTag(%d) = %d, want %d", c.ino, got, c.tag)
		}
		if c.tag != TagNested && NSInode(c.tag) != c.ino {
			t.Errorf("NSInode(%d) = %d, want %d", c.tag, NSInode(c.tag), c.ino)
		}
	}
}
