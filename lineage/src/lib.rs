//! Business lineage: mapping rules from attributes to business keys,
//! milestones, systems and outcomes, and the resolver that joins keys into
//! one transaction. Not built yet: the lineage issue fills this crate.
