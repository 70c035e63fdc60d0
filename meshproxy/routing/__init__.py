"""
meshproxy.routing: from a request to the bound names it may go to.

  - L{path}: L{Path<meshproxy.routing.path.Path>}, hierarchical names
    (C{/svc/users});
  - L{nametree}: name trees (C{Leaf}, C{Alt}, C{Union}, C{Neg}, C{Fail},
    C{Empty}) and their request-time L{evaluate<meshproxy.routing.nametree.evaluate>};
  - L{dtab}: the routing rules (C{/svc => /#/fs;}), their parser and printer;
  - L{delegate}: rewriting a name with the rules into a tree of
    L{BoundName<meshproxy.routing.delegate.BoundName>}s, and explaining it;
  - L{identifiers}: naming a request by host, path or header.
"""
