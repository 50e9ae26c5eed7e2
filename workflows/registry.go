package workflows

// Definition names one workflow and its function. Name is the stable type name operators
// pass to `temporal workflow start --type`; it never changes once shipped.
type Definition struct {
	Name string
	Func any
}

// All lists every workflow the worker registers, in documentation order.
func All() []Definition {
	return []Definition{
		{Name: SelfCheckName, Func: SelfCheck},
	}
}
