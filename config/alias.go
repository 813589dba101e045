package config

import "gopkg.in/yaml.v3"

// maxNodes bounds the size of a document with every alias replaced by the
// value it refers to. yaml.v3 keeps an alias as one node pointing at its
// anchor, so ten lines of nested aliases ("billion laughs") are a small
// tree that means 10^10 values; an anchor may even contain an alias to
// itself. A real walhook.yaml has a few thousand nodes at most.
const maxNodes = 100_000

// checkAliases refuses, with one error, a document whose aliases refer to
// themselves or expand it beyond maxNodes. It runs before expansion and
// decoding, so neither ever walks more than maxNodes nodes, whatever the
// shape of the bomb or the type errors inside it.
func checkAliases(root *yaml.Node, c *collector) bool {
	s := &sizer{memo: map[*yaml.Node]int{}, open: map[*yaml.Node]bool{}}
	if s.size(root) <= maxNodes {
		return true
	}
	if s.cycle != nil {
		c.add(posOf(c.file, s.cycle), "", "alias *%s refers to a value that contains it", s.cycle.Value)
		return false
	}
	n, path := s.largest(root, "")
	c.add(posOf(c.file, n), path, "document too large: aliases expand this value to more than %d nodes", maxNodes)
	return false
}

// sizer counts the nodes of a tree as if every alias were copied out,
// saturating at maxNodes+1. Each node is counted once (memo), so the work
// is proportional to the written document, not to its expansion.
type sizer struct {
	memo  map[*yaml.Node]int
	open  map[*yaml.Node]bool // nodes on the current path, to find cycles
	cycle *yaml.Node          // the first alias found inside its own anchor
}

const tooMany = maxNodes + 1

func (s *sizer) size(n *yaml.Node) int {
	if v, ok := s.memo[n]; ok {
		return v
	}
	if n.Kind == yaml.AliasNode {
		switch {
		case n.Alias == nil:
			return 1
		case s.open[n.Alias]:
			if s.cycle == nil {
				s.cycle = n
			}
			return tooMany
		}
		return s.size(n.Alias)
	}
	s.open[n] = true
	total := 1
	for _, ch := range n.Content {
		total = min(total+s.size(ch), tooMany)
		if total == tooMany {
			break
		}
	}
	delete(s.open, n)
	s.memo[n] = total
	return total
}

// largest descends from n to the first node, in file order, whose own
// expansion is too large although none of its children's is (or to the
// alias that carries the expansion), and returns it with its key path.
func (s *sizer) largest(n *yaml.Node, path string) (*yaml.Node, string) {
	for n.Kind != yaml.AliasNode {
		next := -1
		for i, ch := range n.Content {
			if s.size(ch) > maxNodes {
				next = i
				break
			}
		}
		if next < 0 {
			return n, path
		}
		switch n.Kind {
		case yaml.MappingNode:
			if next%2 == 1 {
				path = join(path, n.Content[next-1].Value)
			}
		case yaml.SequenceNode:
			path = index(path, next)
		}
		n = n.Content[next]
	}
	return n, path
}
