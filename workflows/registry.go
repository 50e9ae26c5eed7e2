package workflows

// Definition names one workflow and its function. Name is the stable type name operators
// pass to `temporal workflow start --type`; it never changes once shipped.
type Definition struct {
	Name string
	Func any
	// NewInput returns a pointer to a zero input value, for validating JSON before a start.
	NewInput func() any
}

// All lists every workflow the worker registers, in documentation order.
func All() []Definition {
	return []Definition{
		{Name: NightlyBackupName, Func: NightlyBackup, NewInput: func() any { return new(NightlyBackupInput) }},
		{Name: VerifyBackupName, Func: VerifyBackup, NewInput: func() any { return new(VerifyBackupInput) }},
		{Name: RedisLossName, Func: RedisLoss, NewInput: func() any { return new(RedisLossInput) }},
		{Name: MinIOLossName, Func: MinIOLoss, NewInput: func() any { return new(MinIOLossInput) }},
		{Name: TotalDBLossName, Func: TotalDBLoss, NewInput: func() any { return new(TotalDBLossInput) }},
		{Name: RestoreTablesName, Func: RestoreTables, NewInput: func() any { return new(RestoreTablesInput) }},
		{Name: FullClusterRecoveryName, Func: FullClusterRecovery, NewInput: func() any { return new(FullClusterRecoveryInput) }},
		{Name: RedispatchLostTasksName, Func: RedispatchLostTasks, NewInput: func() any { return new(RedispatchLostTasksInput) }},
		{Name: SelfCheckName, Func: SelfCheck, NewInput: func() any { return new(SelfCheckInput) }},
	}
}

// Lookup returns the definition registered under name.
func Lookup(name string) (Definition, bool) {
	for _, d := range All() {
		if d.Name == name {
			return d, true
		}
	}
	return Definition{}, false
}
