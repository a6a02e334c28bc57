//! The FUOTA server library: fragmentation of data blocks today; the patch maker, planner and
//! campaign engine land with their issues.
