//! DNS messages (queries, responses with response codes, name compression) and exchanges, for dns-stats.
