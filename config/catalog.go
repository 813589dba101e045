package config

// CatalogEntry is one subscribable event type.
type CatalogEntry struct {
	Type        string
	Description string
	Table       string
}

// Catalog lists the event types of the rules in rule order, each once. When
// several rules produce one type, the first rule's table is named and the
// first non-empty description is used.
func (c *Config) Catalog() []CatalogEntry {
	var out []CatalogEntry
	at := map[string]int{}
	for _, r := range c.Events {
		if i, ok := at[r.Event]; ok {
			if out[i].Description == "" {
				out[i].Description = r.Description
			}
			continue
		}
		at[r.Event] = len(out)
		out = append(out, CatalogEntry{Type: r.Event, Description: r.Description, Table: r.Table})
	}
	return out
}
